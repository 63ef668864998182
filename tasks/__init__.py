"""Prefect tasks: thin steps that return references (URIs, run ids), never tensors."""
