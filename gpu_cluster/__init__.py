"""gpu_cluster: HDBSCAN clustering of panic-tda embeddings stored in a SQL database."""

__version__ = "0.1.0"
