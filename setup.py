"""The optional C module ``policies._wire`` (trace facts in one walk of the bytes).

Everything else is declared in pyproject.toml. Without a C compiler the build goes on
without the module and the policies use the protobuf parses instead, with the same answers.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "policies._wire",
            ["policies/_wire.c"],
            optional=True,
            extra_compile_args=["-O3"],
        )
    ]
)
