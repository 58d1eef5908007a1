//! Scores: what the model says about one window of text, and how that becomes one virality number.
//! Pure code.

use serde::{Deserialize, Serialize};

/// The 28 GoEmotions labels, in the order the emotion head outputs them (index 27 = neutral).
pub const GOEMOTIONS_LABELS: [&str; 28] = [
    "admiration",
    "amusement",
    "anger",
    "annoyance",
    "approval",
    "caring",
    "confusion",
    "curiosity",
    "desire",
    "disappointment",
    "disapproval",
    "disgust",
    "embarrassment",
    "excitement",
    "fear",
    "gratitude",
    "grief",
    "joy",
    "love",
    "nervousness",
    "optimism",
    "pride",
    "realization",
    "relief",
    "remorse",
    "sadness",
    "surprise",
    "neutral",
];

/// How popularity and emotion combine into virality (the seed's 0.8·popularity + 0.2·boost).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScoreWeights {
    pub popularity: f32,
    pub emotion: f32,
}

impl Default for ScoreWeights {
    fn default() -> Self {
        ScoreWeights {
            popularity: 0.8,
            emotion: 0.2,
        }
    }
}

/// Model output for one text: probabilities, already through the sigmoid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextScore {
    pub popularity: f32,
    pub emotions: Vec<f32>,
}

impl TextScore {
    /// The emotion boost: the strongest non-neutral emotion's probability.
    pub fn emotion_boost(&self, neutral: Option<usize>) -> f32 {
        self.emotions
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != neutral)
            .map(|(_, p)| *p)
            .fold(0.0, f32::max)
    }

    /// virality = w_pop·popularity + w_emo·emotion boost, in [0, 1] when the weights sum to 1.
    pub fn virality(&self, w: ScoreWeights, neutral: Option<usize>) -> f32 {
        w.popularity * self.popularity + w.emotion * self.emotion_boost(neutral)
    }

    /// The `k` most probable emotions with their probabilities, most probable first.
    pub fn top_emotions<'a>(&self, labels: &'a [String], k: usize) -> Vec<(&'a str, f32)> {
        let mut idx: Vec<usize> = (0..self.emotions.len().min(labels.len())).collect();
        idx.sort_by(|&a, &b| self.emotions[b].total_cmp(&self.emotions[a]).then(a.cmp(&b)));
        idx.into_iter()
            .take(k)
            .map(|i| (labels[i].as_str(), self.emotions[i]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virality_is_the_seed_formula() {
        let mut emotions = vec![0.0; 28];
        emotions[27] = 0.9; // neutral never boosts
        emotions[26] = 0.5;
        let s = TextScore {
            popularity: 0.6,
            emotions,
        };
        assert!((s.emotion_boost(Some(27)) - 0.5).abs() < 1e-6);
        assert!((s.virality(ScoreWeights::default(), Some(27)) - (0.8 * 0.6 + 0.2 * 0.5)).abs() < 1e-6);
        let labels: Vec<String> = GOEMOTIONS_LABELS.iter().map(|s| s.to_string()).collect();
        assert_eq!(s.top_emotions(&labels, 2), [("neutral", 0.9), ("surprise", 0.5)]);
    }
}
