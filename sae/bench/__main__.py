import sys

from sae.bench import aot, grid, kernels, stacked, step

_COMMANDS = {
    "step": step.main,
    "kernels": kernels.main,
    "grid": grid.main,
    "aot": aot.main,
    "stacked": stacked.main,
}


def main(argv: list[str]) -> None:
    if argv and argv[0] in _COMMANDS:
        _COMMANDS[argv[0]](argv[1:])
    elif argv and argv[0] in ("-h", "--help"):
        from sae import bench

        print(bench.__doc__)
    else:
        step.main(argv)


main(sys.argv[1:])
