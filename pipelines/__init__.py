"""Recipes as data: the paper's pipeline for real models and the CPU demo."""
