"""bench"""

from edgekd.apicall import callable_package  # noqa: E402  (edgekd.bench(...) is the API's bench)

callable_package(__name__, "bench")
