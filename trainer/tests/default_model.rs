//! The shipped model (assets/model) keeps the numbers the README and its manifest claim, measured
//! through the engine on rows it never trained on: Russian emotions (ru_go_emotions validation
//! #part=60-100) and clickbait headlines (#part=95-100 of each file).

#[path = "../../engine/tests/common/mod.rs"]
mod common;

use std::str::FromStr;
use viralclip_trainer::data::Source;

#[test]
fn default_model_meets_its_held_out_numbers() {
    let Some(e5) = common::e5() else { return };
    let repo = common::repo();
    common::shared_data("goemotions-ru/validation.csv");
    let data = common::shared_data("");
    let src = |s: &str| Source::from_str(&data.join(s).to_string_lossy()).unwrap();
    let (ev, _, _) = viralclip_trainer::train::evaluate_model(
        &repo.join("assets/model"),
        Some(&e5),
        &[
            src("goemotions-ru/validation.csv#part=60-100"),
            src("clickbait/clickbait.txt.gz#label=1#part=95-100"),
            src("clickbait/non_clickbait.txt.gz#label=0#part=95-100"),
        ],
        &candle_core::Device::Cpu,
        false,
    )
    .unwrap();
    let emo = ev.emotions_tuned.expect("emotion rows");
    let pop = ev.popularity.expect("headline rows");
    eprintln!(
        "Russian held-out: {} rows, macro-F1 {:.4}, micro-F1 {:.4}; headlines: {} rows, accuracy {:.4}, ROC-AUC {:?}",
        emo.n, emo.macro_f1, emo.micro_f1, pop.n, pop.accuracy, pop.roc_auc
    );
    assert_eq!(emo.n, 2157, "the held-out Russian rows changed");
    assert!(emo.macro_f1 >= 0.40, "Russian macro-F1 {} < 0.40", emo.macro_f1);
    assert!(pop.accuracy >= 0.98, "headline accuracy {}", pop.accuracy);
    assert!(pop.roc_auc.unwrap() >= 0.99, "headline ROC-AUC {:?}", pop.roc_auc);
}
