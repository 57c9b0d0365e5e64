"""NVIDIA Triton Inference Server (the `tritonserver` binary that PyTriton ships) serving the
numeric model of fit_pipeline.py through Triton's Python backend, as PyTriton binds it. Triton
itself answers HTTP (OIP v2 REST) and checks every request against the model's configuration:
one input `input__0` of type FP32 and shape [-1, 2] (batched), one output `output__0` of type
FP64 and shape [-1, 2] (predict_proba), as a config.pbtxt would declare them.

    python triton_churn.py --model MODEL.joblib --port PORT --grpc-port PORT --metrics-port PORT"""

from __future__ import annotations

import argparse
from typing import Any

import joblib
import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

MAX_ROWS = 4096  # Triton refuses a call of more rows than the model's max_batch_size


def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("--model", required=True)
    args.add_argument("--port", type=int, required=True)
    args.add_argument("--grpc-port", type=int, required=True)  # PyTriton watches the model through it
    args.add_argument("--metrics-port", type=int, required=True)
    a = args.parse_args()
    model = joblib.load(a.model)

    @batch  # type: ignore[misc]
    def infer(input__0: np.ndarray) -> dict[str, Any]:
        return {"output__0": model.predict_proba(input__0.astype(np.float64))}

    config = TritonConfig(
        http_address="127.0.0.1", http_port=a.port, grpc_address="127.0.0.1", grpc_port=a.grpc_port, metrics_port=a.metrics_port
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name="churn",
            infer_func=infer,
            inputs=[Tensor(name="input__0", dtype=np.float32, shape=(2,))],
            outputs=[Tensor(name="output__0", dtype=np.float64, shape=(2,))],
            config=ModelConfig(max_batch_size=MAX_ROWS),
            strict=True,
        )
        triton.serve()


if __name__ == "__main__":
    main()
