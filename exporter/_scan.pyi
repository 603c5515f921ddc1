def scan(
    text: str, pos: int, end: int, fwd: dict[str, float], bwd: dict[str, float],
    udata: dict[str, float], udiff: dict[str, float], insert: bool = True,
) -> tuple[int, int, int, int]: ...
