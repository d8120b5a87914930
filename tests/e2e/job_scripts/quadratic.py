"""A typical tuning target: gradient descent on f(x) = (x - 3)^2 from x = 0 with the
learning rate from --lr. Below 1.0 it converges (fastest near 0.5); past 1.0 every step
overshoots further and the loss grows. Reports the loss each step through the SDK and
stops cleanly when the control plane asks."""

import argparse
import time

from workers import sdk


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--step-seconds", type=float, default=0.3)
    args = parser.parse_args()
    sdk.install_signal_handlers()
    x = 0.0
    for step in range(1, args.steps + 1):
        x -= args.lr * 2 * (x - 3)
        loss = (x - 3) ** 2
        sdk.report(step, total=args.steps, loss=loss)
        print(f"step {step} lr {args.lr} loss {loss:.6g}", flush=True)
        time.sleep(args.step_seconds)
        if sdk.stop_requested():
            print(f"stopped at step {step}", flush=True)
            return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
