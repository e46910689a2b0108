"""Writes the bundled example artifacts. Run from the repository root: python3 examples/make_examples.py

malicious.pkl: a pickle whose loading runs `id` (a harmless command) through os.system, the
oldest trick of malicious model files. The file is committed; this script documents how it was
made and remakes it byte for byte.
"""
import os
import pickle


class RunsId:
    def __reduce__(self):
        return (os.system, ("id",))


with open("examples/malicious.pkl", "wb") as f:
    pickle.dump({"weights": [0.1, 0.2], "config": RunsId()}, f, protocol=4)
