"""The zero-setup demo: replay of the bundled bars and the retraining act."""
