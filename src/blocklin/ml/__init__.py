"""scikit-learn-compatible estimators built on blocklin operators."""

__all__: list[str] = []

from blocklin.ml.als import ALS
from blocklin.ml.ease import EASE
from blocklin.ml.linear import LinearRegression
from blocklin.ml.logistic import LogisticRegression
from blocklin.ml.pca import PCA
from blocklin.ml.persist import load
from blocklin.ml.truncated_svd import TruncatedSVD

__all__ += ["ALS", "EASE", "PCA", "LinearRegression", "LogisticRegression", "TruncatedSVD", "load"]
