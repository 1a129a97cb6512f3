/// Which PSPs to try for a payment, in order. Routing by currency, merchant and amount comes
/// with the routing rules; the fallback list is what fail-over after a decline walks.
#[derive(Debug, Clone)]
pub struct Router {
    order: Vec<String>,
}

impl Router {
    pub fn new(order: Vec<String>) -> Self {
        Self { order }
    }

    pub fn candidates(&self) -> &[String] {
        &self.order
    }
}
