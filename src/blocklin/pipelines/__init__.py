"""The pipeline engine: YAML specs, the runner, incremental refresh, manifests, reports."""
