/// `SystemTime` has no facet shape: the error names it, at the argument.
#[osmos::service]
pub trait Clock {
    async fn at(&self, label: String, when: std::time::SystemTime) -> bool;
}

fn main() {}
