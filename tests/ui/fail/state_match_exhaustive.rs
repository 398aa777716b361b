// `State` is non-exhaustive: a later version may add a state, so a match needs a
// catch-all arm.
use circuitpy::State;

fn describe(state: State) -> &'static str {
    match state {
        State::Closed => "closed",
        State::Open => "open",
        State::HalfOpen => "half-open",
        State::ForcedOpen => "forced open",
        State::ForcedClosed => "forced closed",
    }
}

fn main() {
    let _ = describe(State::Closed);
}
