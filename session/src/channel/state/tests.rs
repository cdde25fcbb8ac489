//! Tests of the channel state: credit for items and what consuming grants.

use super::*;

fn receiving(window: u32) -> Arc<ChannelCore> {
    ChannelCore::receiving_for_tests(1, window)
}

#[test]
fn empty_items_cost_credit_so_an_unread_queue_stays_bounded() {
    let core = receiving(10 * ITEM_CREDIT as u32);
    for i in 0..10 {
        core.on_item(&[], None)
            .unwrap_or_else(|v| panic!("empty item {i} within the window: {v:?}"));
    }
    let v = core
        .on_item(&[], None)
        .expect_err("the 11th empty item overruns the window");
    assert_eq!(v.rule, Rule::CreditNoOverrun.name());
    assert_eq!(core.lock().queue.len(), 10);
}

#[test]
fn consuming_grants_back_what_the_items_cost() {
    let window = 4 * credit_cost(8);
    let core = receiving(window as u32);
    for _ in 0..4 {
        core.on_item(&[0; 8], None).unwrap();
    }
    assert!(core.on_item(&[0; 8], None).is_err(), "a fifth item overruns");
    let core = receiving(window as u32);
    for _ in 0..4 {
        core.on_item(&[0; 8], None).unwrap();
    }
    // Two items consumed are half the window: their whole cost comes back.
    let mut granted = 0;
    for _ in 0..2 {
        if let Some(Ok(Some((_, Some(g))))) = core.try_next_item(None) {
            granted += u64::from(g);
        }
    }
    assert_eq!(granted, 2 * credit_cost(8));
    for _ in 0..2 {
        core.on_item(&[0; 8], None).unwrap();
    }
    assert!(core.on_item(&[0; 8], None).is_err(), "the window is full again");
}
