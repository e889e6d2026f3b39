"""The pooling endpoints: embeddings, scores and reranking, classification."""

from herdsman.api.pooling.classify import classify
from herdsman.api.pooling.embeddings import embeddings
from herdsman.api.pooling.score import rerank, score

__all__ = ["classify", "embeddings", "rerank", "score"]
