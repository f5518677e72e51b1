"""Learned models trained online from the event log: embedding tables, a two-tower retrieval model
and a multi-task ranking model, and the trainer that keeps them current (docs/learning.md)."""

from foryou.learning.embeddings import EmbeddingTable
from foryou.learning.model import Model
from foryou.learning.online import Learner

__all__ = ["EmbeddingTable", "Learner", "Model"]
