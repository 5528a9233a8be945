"""The measuring code behind the `intl-bench` console script."""
