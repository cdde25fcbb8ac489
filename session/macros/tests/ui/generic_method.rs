#[osmos::service]
pub trait Store {
    async fn put<T>(&self, value: T) -> u32;
}

fn main() {}
