use circuitpy::circuit_breaker;
include!("../handler.rs");

#[circuit_breaker(handler = Api, key = host)]
fn fetch(host: String, path: &str) -> Result<String, Error> {
    // The key borrowed `host`; the body still owns it.
    let mut url = host;
    url.push_str(path);
    Ok(url)
}

#[circuit_breaker(handler = Api, key = format!("{region}-{zone}"))]
async fn zone(region: String, zone: u8) -> Result<String, Error> {
    Ok(format!("{region}/{zone}"))
}

fn main() {
    assert_eq!(fetch("example.com".to_owned(), "/a").unwrap(), "example.com/a");
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    assert_eq!(runtime.block_on(zone("eu".to_owned(), 3)).unwrap(), "eu/3");
}
