"""Tests of the data layer (mot_lightning/data)."""
