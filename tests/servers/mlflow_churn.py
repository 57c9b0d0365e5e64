"""Saves fit_pipeline.py's model as an MLflow pyfunc model that answers a DataFrame with one
column, churn_probability; `mlflow models serve` then answers
{"predictions": [{"churn_probability": p}, ...]}, as a team's MLflow baseline does.

    python mlflow_churn.py PIPELINE.joblib OUT_DIR"""

from __future__ import annotations

import sys
from typing import Any

import joblib
import mlflow.pyfunc
import pandas as pd


class Churn(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    def load_context(self, context: Any) -> None:
        self.pipeline = joblib.load(context.artifacts["pipeline"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        proba = self.pipeline.predict_proba(model_input[["x", "y", "plan"]])[:, 1]
        return pd.DataFrame({"churn_probability": proba})


if __name__ == "__main__":
    mlflow.pyfunc.save_model(sys.argv[2], python_model=Churn(), artifacts={"pipeline": sys.argv[1]})
