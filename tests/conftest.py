from __future__ import annotations

pytest_plugins = ["blocklin.testing.fixtures"]
