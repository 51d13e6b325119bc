"""Configs, one per runnable job (`msjax --config=<name>[:variant]`); each returns a locked ConfigDict."""
