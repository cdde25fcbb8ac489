#[osmos::service]
pub trait Names {
    async fn borrowed(&self) -> &str;
    async fn opaque(&self) -> impl std::fmt::Display;
}

fn main() {}
