#[osmos::service]
pub trait Geometry {
    async fn area(&self, (w, h): (u32, u32)) -> u64;
    async fn grow(&self, size: &mut u32);
}

fn main() {}
