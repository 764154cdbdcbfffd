"""The optional C modules: ``policies._wire`` (trace facts in one walk of the bytes) and
``streams.pipeline._dropped`` (the dropped decisions' hash table).

Everything else is declared in pyproject.toml. Without a C compiler the build goes on
without them: the policies use the protobuf parses instead, and the decision cache its
Python table, with the same answers.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "policies._wire",
            ["policies/_wire.c"],
            optional=True,
            extra_compile_args=["-O3"],
        ),
        Extension(
            "streams.pipeline._dropped",
            ["streams/pipeline/_dropped.c"],
            optional=True,
            extra_compile_args=["-O3"],
        ),
    ]
)
