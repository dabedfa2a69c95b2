"""scikit-learn-compatible estimators built on blocklin operators."""

__all__: list[str] = []

from blocklin.ml.linear import LinearRegression

__all__ += ["LinearRegression"]
