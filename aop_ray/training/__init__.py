"""Training on Ray Train: the worker loop (`loop`) and the driver that launches it (`driver`)."""
