"""placeholder"""
def run_bench(**kw):  # type: ignore[no-untyped-def]
    raise NotImplementedError
