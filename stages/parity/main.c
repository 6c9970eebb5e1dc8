/* qie-parity MODEL --model DIR --in IN.safetensors --out OUT.safetensors [--device cpu|cuda]
 * MODEL is vae, transformer or text. See parity.h. */
#include <string.h>

#include "cli.h"
#include "err.h"
#include "log.h"
#include "parity.h"

int main(int argc, char **argv) {
    char err[QIE_ERR_LEN] = "";
    ParityArgs a = {0};
    const CliOpt opts[] = {
        {"model", CLI_STR, &a.model_dir, NULL, "model folder (diffusers layout)", 0, 0},
        {"in", CLI_STR, &a.in_path, NULL, "inputs (.safetensors)", 0, 0},
        {"out", CLI_STR, &a.out_path, NULL, "outputs (.safetensors), written atomically", 0, 0},
        {"device", CLI_STR, &a.device, "cpu", "cpu, cuda or cuda:N", 0, 0},
    };
    const CliSpec spec = {"qie-parity", "vae|transformer|text --model DIR --in IN.safetensors --out OUT.safetensors",
                          "Runs one model on a file of inputs and writes its outputs (and gradients) as f32:\n"
                          "  vae          pixels [B,3,H,W] -> mean, logvar, latents\n"
                          "  transformer  hidden_states, encoder_hidden_states(_mask), timestep, img_shapes\n"
                          "               [, grad_output] -> output [, grad.<name> ...]\n"
                          "  text         prompts in __metadata__, images image.<i>.<k> -> input_ids,\n"
                          "               prompt_embeds, prompt_embeds_mask",
                          opts, (int)(sizeof opts / sizeof *opts), 1};
    log_init("parity");
    const char *pos[1];
    int npos = 0;
    int rc = cli_parse(err, &spec, argc, argv, pos, &npos);
    if (rc == 1) return 0;
    if (!rc && (npos != 1 || !a.model_dir || !a.in_path || !a.out_path)) {
        qie_seterr(err, "qie-parity needs a model kind and --model, --in and --out (see --help)");
        rc = QIE_EINVAL;
    }
    if (rc) {
        log_error("%s", err);
        return 2;
    }
    if (!strcmp(pos[0], "vae")) rc = parity_vae(err, &a);
    else if (!strcmp(pos[0], "transformer")) rc = parity_transformer(err, &a);
    else if (!strcmp(pos[0], "text")) rc = parity_text(err, &a);
    else {
        log_error("unknown model kind '%s' (vae, transformer or text)", pos[0]);
        return 2;
    }
    if (rc) {
        log_error("%s", err);
        return 1;
    }
    return 0;
}
