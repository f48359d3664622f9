"""What the tests share besides fixtures: builders, fakes, constants and check helpers.

Test modules import from here, never from one another (``tests/unit/test_layer_build.py`` checks it).
Fixtures that every module of a suite gets live in that suite's ``conftest.py``; the few here (the fake
CLI servers, the end-to-end API stack, the integration event path) are imported by the modules that use
them, by name.
"""
