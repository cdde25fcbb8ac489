#[osmos::service]
pub trait Counter {
    async fn missing(n: u32) -> u32;
    async fn by_value(self) -> u32;
    async fn exclusive(&mut self) -> u32;
}

fn main() {}
