"""Apache Beam transforms, embedding backends and sinks: thin adapters over ``tiering``."""
