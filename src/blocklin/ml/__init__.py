"""scikit-learn-compatible estimators built on blocklin operators."""

__all__: list[str] = []
