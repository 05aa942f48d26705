"""The app's library: infer tasks (``infers``), request parameters, result writing, HTTP errors, and
the adjustments that make MONAI Label's server fit image-to-image tasks (``server``)."""
