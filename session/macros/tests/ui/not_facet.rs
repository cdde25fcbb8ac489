/// Not a `Facet` type: it cannot cross a link.
pub struct Opaque;

#[osmos::service]
pub trait Files {
    async fn open(&self, path: String) -> Opaque;
}

fn main() {}
