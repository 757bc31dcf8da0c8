//! Named experiments: the ARENA seed's three examples (with [`RunOptions::seed`]) and the
//! post's demonstrations (with the post's settings, `RunOptions::default()`), for GPT-2-XL's 48
//! layers; [`scale_layers`] maps them onto a shallower model.

use crate::{AdditionSpec, RunOptions};

/// Layers of the model every preset was written for (GPT-2-XL).
pub const WRITTEN_FOR_LAYERS: u32 = 48;

pub struct Preset {
    pub name: &'static str,
    pub description: String,
    pub prompt: &'static str,
    pub additions: Vec<AdditionSpec>,
    pub options: RunOptions,
}

fn pair(layer: u32, coeff: f64, plus: &str, minus: &str) -> Vec<AdditionSpec> {
    vec![AdditionSpec::new(layer, coeff, plus), AdditionSpec::new(layer, -coeff, minus)]
}

pub fn all() -> Vec<Preset> {
    let mut v = vec![
        Preset {
            name: "love-hate",
            description: "ARENA: Love/Hate at the output of block 6, +-8, with BOS".into(),
            prompt: "I hate you because",
            additions: pair(6, 8.0, "Love ", "Hate"),
            options: RunOptions::seed(true),
        },
        Preset {
            name: "weddings",
            description: "ARENA: weddings at the output of block 20, +-4".into(),
            prompt: "I went up to my friend and said",
            additions: pair(20, 4.0, "I talk about weddings constantly  ", "I do not talk about weddings constantly"),
            options: RunOptions::seed(false),
        },
        Preset {
            name: "eiffel",
            description: "ARENA: Eiffel Tower in Rome at the output of block 24, +-10".into(),
            prompt: "To see the eiffel tower, people flock to",
            additions: pair(24, 10.0, "The Eiffel Tower is in Rome", "The Eiffel Tower is in France"),
            options: RunOptions::seed(false),
        },
    ];
    let post_demos: [(&str, &str, &str, &str, u32, f64); 12] = [
        ("post-1", "I hate you because", "Love", "Hate", 6, 5.0),
        ("post-2", "I want to kill you because you're such a", "Intent to praise", "Intent to hurt", 6, 15.0),
        ("post-3", "Barack Obama was born in", "Bush did 9/11 because", "", 23, 1.0),
        (
            "post-4",
            "Some people think that death is scary and should be avoided. I agree. I never want to die. \
             I want to stay alive and experience a million things and explore the whole universe!",
            "Want to die",
            "Want to stay alive",
            10,
            3.0,
        ),
        ("post-5", "I think you're", "Anger", "Calm", 20, 10.0),
        ("post-6", "To see the eiffel tower, people flock to", "The Eiffel Tower is in Rome", "The Eiffel Tower is in France", 24, 10.0),
        ("post-7", "Thanks for asking about that! I moved to Berkeley, CA because", "Dragons live in Berkeley", "People live in Berkeley", 15, 4.0),
        (
            "post-8",
            "The rock hurtled toward the child. The child couldn't get out of the way in time, and so sadly the rock",
            "I NEVER talk about people getting hurt",
            "I talk about people getting hurt",
            15,
            4.0,
        ),
        ("post-9", "I went up to my friend and said", "I talk about weddings constantly", "I do not talk about weddings constantly", 20, 4.0),
        ("post-10", "I want to kill you because you're such a", "Intent to convert you to Christianity", "Intent to hurt you", 6, 3.0),
        ("post-12a", "Yesterday, my dog died. Today, I got denied for a raise. I'm feeling", "Anger", "Calm", 20, 2000.0),
        ("post-13", "I want to kill you because", "Je m'appelle", "My name is", 6, 5.0),
    ];
    for (name, prompt, plus, minus, layer, coeff) in post_demos {
        v.push(Preset {
            name,
            description: if minus.is_empty() {
                format!("the post: \"{plus}\" alone, x{coeff} at RESID_PRE {layer}")
            } else {
                format!("the post: \"{plus}\" - \"{minus}\", x{coeff} at RESID_PRE {layer}")
            },
            prompt,
            additions: pair(layer, coeff, plus, minus),
            options: RunOptions::default(),
        });
    }
    v.push(Preset {
        name: "post-11",
        description: "the post: \"Love\" alone, x10 at RESID_PRE 6 (unpaired: fails by design)".into(),
        prompt: "I hate you because",
        additions: vec![AdditionSpec::new(6, 10.0, "Love")],
        options: RunOptions::default(),
    });
    v.push(Preset {
        name: "post-15",
        description: "the post: Love - Hate x5 at RESID_PRE 6, and \" wedding\" - \" \" x5 at 15 (two layers)".into(),
        prompt: "I hate you because",
        additions: [pair(6, 5.0, "Love", "Hate"), pair(15, 5.0, " wedding", " ")].concat(),
        options: RunOptions::default(),
    });
    v
}

pub fn find(name: &str) -> Option<Preset> {
    all().into_iter().find(|p| p.name == name)
}

/// Maps every layer of a preset, written for [`WRITTEN_FOR_LAYERS`], onto a model with `to`
/// layers, in proportion (layer 20 of 48 is layer 1 of 4).
pub fn scale_layers(p: &mut Preset, to: u32) {
    for a in p.additions.iter_mut() {
        a.layer = (a.layer * to / WRITTEN_FOR_LAYERS).min(to.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_preset_has_its_own_description_and_scales_onto_a_small_model() {
        let all = super::all();
        let mut seen = std::collections::HashSet::new();
        for mut p in all {
            assert!(seen.insert(p.description.clone()), "{} repeats a description", p.name);
            super::scale_layers(&mut p, 4);
            assert!(p.additions.iter().all(|a| a.layer < 4), "{}", p.name);
        }
        let mut w = super::find("weddings").unwrap();
        super::scale_layers(&mut w, 4);
        assert_eq!(w.additions[0].layer, 1);
    }
}
