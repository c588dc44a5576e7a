"""Offline tools: data, labeling, patches, training, export. Never imported by the node."""
