"""Fits the real-server tests' scikit-learn model and saves it with joblib. Run by each server's
own Python (tests/servers/*), so the model file matches the scikit-learn that loads it; the data
and seed are fixed, so every server fits the same model.

    python fit_pipeline.py OUT.joblib [--numeric]

The model reads the tests' envelope inputs: x, y (numbers) and plan ("free" | "pro") as a
DataFrame; with --numeric it reads an [n, 2] array of x and y (a tensor server's model)."""

from __future__ import annotations

import argparse

import joblib
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler


def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("out")
    args.add_argument("--numeric", action="store_true")
    a = args.parse_args()
    rng = np.random.default_rng(0)
    n = 5000
    frame = pd.DataFrame({"x": rng.normal(size=n), "y": rng.random(n), "plan": rng.choice(["free", "pro"], n)})
    label = (frame.x + 0.5 * (frame.plan == "pro") + rng.normal(size=n) > 0).astype(int)
    if a.numeric:
        model = make_pipeline(StandardScaler(), LogisticRegression()).fit(frame[["x", "y"]].to_numpy(), label)
    else:
        columns = ColumnTransformer([("num", StandardScaler(), ["x", "y"]), ("cat", OneHotEncoder(), ["plan"])])
        model = make_pipeline(columns, LogisticRegression()).fit(frame, label)
    joblib.dump(model, a.out)


if __name__ == "__main__":
    main()
