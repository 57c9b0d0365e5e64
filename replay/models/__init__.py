"""Model clients: HTTP JSON (generic, Open Inference Protocol v2, MLflow) and in-process
Python callables, all behind one batch interface (`ModelClient.predict`)."""
