use circuitpy::circuit_breaker;
include!("../handler.rs");

struct Client {
    calls: u32,
}

impl Client {
    #[circuit_breaker(handler = Api)]
    fn peek(&self, add: u32) -> Result<u32, Error> {
        Ok(self.calls + add)
    }

    #[circuit_breaker(handler = Api, fallback = Self::cached)]
    fn call(&mut self, add: u32) -> Result<u32, Error> {
        self.calls += add;
        Ok(self.calls)
    }

    fn cached(&mut self, _add: u32) -> Result<u32, Error> {
        Ok(0)
    }

    #[circuit_breaker(handler = Api)]
    fn finish(self) -> Result<u32, Error> {
        Ok(self.calls)
    }

    #[circuit_breaker(handler = Api)]
    async fn peek_async(&self) -> Result<u32, Error> {
        Ok(self.calls)
    }
}

fn main() {
    let mut client = Client { calls: 0 };
    assert_eq!(client.call(2).unwrap(), 2);
    assert_eq!(client.peek(1).unwrap(), 3);
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    assert_eq!(runtime.block_on(client.peek_async()).unwrap(), 2);
    assert_eq!(client.finish().unwrap(), 2);
}
