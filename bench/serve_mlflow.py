"""The MLflow side of ``bench/serve.py``: fit the scikit-learn twin of ``churn`` and save it.

Run by the MLflow venv's python (it imports scikit-learn and MLflow, never sluice):

    data/generated/mlflow-venv/bin/python bench/serve_mlflow.py ROWS.parquet MODEL_DIR --l2 0.001

``ROWS.parquet`` holds the rows ``conf/pipelines/churn_train.yaml`` reads (its read filter
applied) and a boolean ``_train`` column: the rows its logistic regression trains on (the
others are its validation hold-out). The preparation is fitted as sluice fits it, on all the
rows (median imputation of total_charges, one-hot of plan and region, standard scaling of
the three numeric columns), the logistic regression on the ``_train`` rows with
C = 1 / (l2 * n) (sluice minimises mean log-loss + l2/2 |w|^2; scikit-learn
C * sum log-loss + 1/2 |w|^2). The fitted Pipeline is saved with
``mlflow.sklearn.save_model(..., pyfunc_predict_fn="predict_proba")`` so that
``mlflow models serve`` answers [[P(0), P(1)], ...].
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

FEATURES = ["tenure", "plan", "region", "monthly_charges", "total_charges"]
LABEL = "churned"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--l2", type=float, default=0.001)
    args = parser.parse_args(argv)

    import warnings

    import mlflow.sklearn
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame = pd.read_parquet(args.rows)
    train = frame["_train"].to_numpy(dtype=bool)
    features = frame[FEATURES]
    prepare = ColumnTransformer([
        ("total_charges", Pipeline([("impute", SimpleImputer(strategy="median")),
                                    ("scale", StandardScaler())]), ["total_charges"]),
        ("scale", StandardScaler(), ["tenure", "monthly_charges"]),
        ("one_hot", OneHotEncoder(handle_unknown="ignore"), ["plan", "region"]),
    ])
    prepare.fit(features)  # as sluice: the preparation sees every row, hold-out included
    n = int(train.sum())
    model = LogisticRegression(C=1.0 / (args.l2 * n), tol=1e-10, max_iter=10_000)
    model.fit(prepare.transform(features[train]), frame[LABEL].to_numpy()[train])
    pipeline = Pipeline([("prepare", prepare), ("model", model)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proba = pipeline.predict_proba(features)
        signature = infer_signature(features, proba)
    if args.out.exists():
        shutil.rmtree(args.out)
    mlflow.sklearn.save_model(pipeline, str(args.out), signature=signature,
                              pyfunc_predict_fn="predict_proba",
                              skops_trusted_types=["numpy.dtype"])  # OneHotEncoder's dtype
    json.dump({"training_rows": n, "rows": len(frame), "C": 1.0 / (args.l2 * n),
               "coef": np.asarray(model.coef_).ravel().tolist(),
               "intercept": float(model.intercept_[0]),
               "imputed_total_charges": float(prepare.named_transformers_["total_charges"]
                                              .named_steps["impute"].statistics_[0])},
              sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
