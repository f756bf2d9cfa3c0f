use super::*;

const SERVICES: &str = include_str!("../../../topology/services.yaml");

fn services() -> ServiceCatalog {
    ServiceCatalog::from_yaml("services.yaml", SERVICES).unwrap()
}

#[test]
fn worked_examples_validate() {
    for (file, src) in [
        (
            "order-checkout.yaml",
            include_str!("../../../topology/sagas/order-checkout.yaml"),
        ),
        (
            "travel-booking.yaml",
            include_str!("../../../topology/sagas/travel-booking.yaml"),
        ),
        (
            "customer-onboarding.yaml",
            include_str!("../../../topology/sagas/customer-onboarding.yaml"),
        ),
    ] {
        let def =
            SagaDefinition::from_yaml(file, src, &services()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(def.version, 1);
        assert!(!def.steps().is_empty());
    }
}
