"""The analyser as a device: models, the Analyzer facade and its factories."""
