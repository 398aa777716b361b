use circuitpy::circuit_breaker;
include!("../handler.rs");

#[circuit_breaker(handler = Api)]
fn guarded(value: u32) -> Result<u32, Error> {
    if value == 0 {
        return Err(Error::Down);
    }
    let doubled = checked(value)?;
    Ok(doubled)
}

fn checked(value: u32) -> Result<u32, Error> {
    value.checked_mul(2).ok_or(Error::Down)
}

fn main() {
    assert_eq!(guarded(2).unwrap(), 4);
    assert!(matches!(guarded(0), Err(Error::Down)));
}
