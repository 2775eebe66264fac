"""The ingest engine: list -> plan -> virtualize -> write -> commit. It knows nothing of Kubernetes."""
