#[osmos::service]
pub trait Geometry {
    async fn area(&self, (w, h): (u32, u32)) -> u64;
    async fn grow(&self, size: &mut u32);
    async fn scale(&self, options: u32) -> u32;
    async fn new(&self) -> u32;
    async fn grow_with(&self) -> u32;
}

fn main() {}
