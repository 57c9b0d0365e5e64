"""KServe's Python model server (`kserve.Model` + `kserve.ModelServer`, Open Inference Protocol
v2 over REST) serving the numeric model of fit_pipeline.py, as a KServe custom predictor does.
It reads one [n, 2] FP64 tensor (x, y) and answers `predict_proba` as an [n, 2] tensor.

    python kserve_churn.py --model MODEL.joblib --port PORT"""

from __future__ import annotations

import argparse
import uuid
from typing import Any

import joblib
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class Churn(Model):  # type: ignore[misc]
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.model = joblib.load(path)
        self.ready = True

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> Any:
        proba = self.model.predict_proba(payload.inputs[0].as_numpy())
        out = InferOutput(name="predict_proba", shape=list(proba.shape), datatype="FP64")
        out.set_data_from_numpy(proba, binary_data=False)
        # a v2 request's id is optional; the answer's is not
        return InferResponse(model_name=self.name, infer_outputs=[out], response_id=payload.id or str(uuid.uuid4()))


def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("--model", required=True)
    args.add_argument("--port", type=int, required=True)
    a = args.parse_args()
    ModelServer(http_port=a.port, enable_grpc=False).start([Churn("churn", a.model)])


if __name__ == "__main__":
    main()
