"""Loads a pickle the way a user would: python3 examples/load_pickle.py FILE"""
import pickle
import sys

with open(sys.argv[1], "rb") as f:
    obj = pickle.load(f)
print("loaded:", type(obj).__name__)
