"""Synapses: cleft map-reduce connected components, partner assignment, deduplication."""
