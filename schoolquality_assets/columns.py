"""What every column of every table means: units, scale (logit or proportion) and direction.
Shown as column descriptions in the Dagster UI (``dagster/column_schema``)."""

COLUMNS = {
    # landing contract and ingest
    "school_id": "School identifier (text, as delivered).",
    "year": "Assessment year.",
    "subject": "reading, writing or math (lower case).",
    "n_eligible": "Grade 3 students eligible for the assessment.",
    "n_participating": "Students who took part.",
    "n_l3l4": "Students at level 3 or 4 (meeting the standard).",
    "n_trials": "Binomial trials = n_participating.",
    "y_success": "Binomial successes = n_l3l4.",
    "participation": "n_participating / n_eligible (proportion, 0-1).",
    "source_file": "Landing file the row came from (or the synthetic province).",
    "source_row": "Row number within its landing file (1 = first data row; a publisher's wide row gives one row per subject).",
    "source_format": "How the file was read: contract (the landing contract), eqao (EQAO's published results) or synthetic.",
    "publisher_suppressed": "The publisher's suppression flag (EQAO's Suppressed): 0 = published, other values = suppressed.",
    "n_exempted": "Students exempted (EQAO cntExempted_<subject>).",
    "n_absent": "Students absent (EQAO cntAbsent_<subject>).",
    "n_no_data": "Students with no data (EQAO cntNoData_<subject>).",
    "n_level4": "Participants at level 4.",
    "n_level3": "Participants at level 3.",
    "n_level2": "Participants at level 2.",
    "n_level1": "Participants at level 1.",
    "n_ne1": "Participants with not enough evidence for level 1 (NE1).",
    "school_name": "The school's name as the publisher gives it (latest year); null when the data names no school.",
    "board_id": "The school board's identifier (EQAO BoardMident); null when the data gives none.",
    "board_name": "The school board's name (latest year); null when the data gives none.",
    "language": "Language of the school (en / fr), as published; null when the data gives none.",
    "org_type": "Publisher's organisation type: P province, B board (S, schools, are observations instead).",
    "org_id": "Publisher's organisation identifier (EQAO OrgID).",
    "first_year": "Earliest year in the file.",
    "last_year": "Latest year in the file.",
    "landing_rows": "Landing rows read from the file (one per school and subject).",
    "school_subjects_suppressed": "School-subjects the publisher suppressed (rejected as suppressed_by_publisher).",
    "reason": "Why the row was rejected or filtered (reason code, see README).",
    "detail": "Every per-row problem found, in words.",
    "year_subject": "Fixed-effect cell: year and subject, e.g. 2015_math.",
    "school_year_id": "Cohort key: school and year.",
    "school_subject_id": "Subject-profile key: school and subject.",
    "partition": "Model partition the row belongs to: full or subsample.",
    # eligible_schools / g3_school_quality
    "n_obs": "Observations (year x subject) of the school after filtering.",
    "n_obs_high_participation": "Observations with participation >= 0.70.",
    "mean_n_trials": "Average participating students per observation.",
    "total_n_trials": "Participating students summed over observations.",
    "g3_school_re": "Posterior mean of the school random intercept r_school in M2 (logit scale; > 0 = above the "
                    "province at the same year and subject).",
    "g3_re_sd": "Posterior SD of that intercept (logit scale): its measurement error for Stage 2.",
    "g3_re_lower_95": "2.5% posterior quantile of the intercept (logit).",
    "g3_re_upper_95": "97.5% posterior quantile of the intercept (logit).",
    "data_vintage": "Latest year in the cleaned data.",
    # shrinkage
    "mean_n": "Average participating students per observation.",
    "band": "School size band by mean_n: <=25, 26-100, >100 students.",
    "raw_proportion": "Pooled proportion sum(y)/sum(n): M1's no-pooling estimate (proportion, 0-1).",
    "raw_mean_proportion": "Unweighted mean of the school's observed proportions: M0's no-pooling estimate (0-1).",
    "m0_estimate": "M0 posterior mean of the school's proportion (0-1).",
    "m1_estimate": "M1 posterior mean of the school's proportion, inverse logit (0-1).",
    "m0_shrinkage_pp": "|raw_mean_proportion - m0_estimate| in percentage points.",
    "m1_shrinkage_pp": "|raw_proportion - m1_estimate| in percentage points.",
    # variance, school SD, school effects
    "component": "Variance component (logit scale).",
    "variance": "Posterior mean variance on the logit scale (observation: pi^2/3, fixed).",
    "pct_total": "Share of the total variance including pi^2/3, in percent.",
    "pct_latent": "Share of the latent variance (school + cohort + profile), in percent.",
    "model": "Model: M0-M3.",
    "description": "What the model contains.",
    "sd_school": "Posterior mean school SD (logit scale).",
    "lower": "2.5% posterior quantile (same scale as the estimate).",
    "upper": "97.5% posterior quantile (same scale as the estimate).",
    "mean": "Posterior mean of r_school, M3 (logit scale; > 0 = above average).",
    "sd": "Posterior SD of r_school (logit scale).",
    "rank": "Rank of the posterior mean: 1 = lowest school effect.",
    # school rankings (M2 posterior draws; the average school = mean of the J school effects in the same draw)
    "p_below_average": "Posterior probability (0-1) that the school's M2 effect r_school is below the average school "
                       "(the mean of all J schools' effects in the same draw); 0.5 = no evidence either way.",
    "near_cut": "True when p_below_average lies within 2 Monte Carlo standard errors of a cut (0.025 or 0.975): the "
                "school's distinguishable label could change with more draws.",
    "p_below_average_mcse": "Monte Carlo standard error of p_below_average (arviz MCSE of the mean of the per-draw "
                            "indicator; 0 when the indicator is the same in every draw).",
    "rank_median": "Posterior median of the school's rank among the J schools of the fit, 1 = lowest school "
                   "effect, J = highest (a rank that was drawn: the lower median).",
    "rank_lower_95": "2.5% posterior quantile of the rank (1 = lowest effect): lower end of the 95% rank interval.",
    "rank_upper_95": "97.5% posterior quantile of the rank (1 = lowest effect): upper end of the 95% rank interval.",
    "p_bottom_10": "Posterior probability (0-1) that the school is in the bottom 10%: rank <= ceil(0.1 J), "
                   "1 = lowest effect.",
    "p_bottom_10_mcse": "Monte Carlo standard error of p_bottom_10 (arviz MCSE; 0 when constant over draws).",
    "p_top_10": "Posterior probability (0-1) that the school is in the top 10%: rank > J - ceil(0.1 J) "
                "(the highest effects).",
    "p_top_10_mcse": "Monte Carlo standard error of p_top_10 (arviz MCSE; 0 when constant over draws).",
    "rank_median_mcse": "Monte Carlo standard error of rank_median, in places (arviz's quantile MCSE of the per-draw "
                        "ranks; 0 when the rank is the same in every draw).",
    "rank_lower_95_mcse": "Monte Carlo standard error of rank_lower_95 (the 2.5% quantile of the per-draw ranks), in places.",
    "rank_upper_95_mcse": "Monte Carlo standard error of rank_upper_95 (the 97.5% quantile of the per-draw ranks), in places.",
    "distinguishable": "Distinguishable from the average school at 95%: 'below' when p_below_average >= 0.975 (the "
                       "95% interval of effect minus average lies below 0), 'above' when <= 0.025, else 'cannot tell'.",
    "below": "Schools below the average school at 95% (distinguishable = 'below').",
    "above": "Schools above the average school at 95% (distinguishable = 'above').",
    "cannot_tell": "Schools that cannot be told apart from the average school at 95%.",
    "median_rank_interval_width": "Median over the band's schools of rank_upper_95 - rank_lower_95: places "
                                  "a typical 95% rank interval spans.",
    # posterior predictive checks and the held-out year
    "statistic": "Test statistic of the posterior predictive check (code; see description).",
    "observed": "The statistic on the observed data.",
    "replicated_mean": "Mean of the statistic over the replicated data sets.",
    "replicated_lower": "2.5% quantile of the replicated statistic.",
    "replicated_upper": "97.5% quantile of the replicated statistic.",
    "p_value": "Posterior predictive p-value P(T_rep >= T_obs), ties counted half; outside [0.025, 0.975] the model "
               "does not reproduce the statistic.",
    "draws": "Replicated data sets (posterior draws) used.",
    "heldout_year": "The latest year, held out of the fits and predicted.",
    "observations": "Held-out results (school x subject of the held-out year).",
    "coverage_50": "Share of held-out results inside their 50% central predictive interval (randomised PIT).",
    "coverage_90": "Share of held-out results inside their 90% central predictive interval (randomised PIT).",
    "coverage_50_inclusive": "Share of held-out counts within the 25%-75% predictive quantiles, bounds included.",
    "coverage_90_inclusive": "Share of held-out counts within the 5%-95% predictive quantiles, bounds included.",
    "mean_lpd": "Mean log predictive density per held-out result (higher is better).",
    "mean_lpd_se": "Standard error of mean_lpd over held-out results.",
    "new_school_observations": "Held-out results of schools absent from the earlier years (new school effect drawn).",
    "training_years": "Years the held-out fits were fitted to.",
    "gate": "The held-out fit's convergence gate: passed, what failed, or no fit (a baseline).",
    # LOO and diagnostics
    "unit": "What is left out: one observation, or one cohort with its effect integrated out.",
    "elpd_loo": "Expected log predictive density (higher is better).",
    "elpd_diff": "Difference to the best model (0 for the best; negative = worse).",
    "se_diff": "Standard error of elpd_diff.",
    "pareto_k_gt_0_7": "Units whose PSIS Pareto k exceeds 0.7 (unreliable importance weights).",
    "max_rhat": "Largest rank-normalised split R-hat over the gated quantities (hyperparameters pass at <= 1.01; "
                "school effects at the limit for their number, r_school_rhat_limit).",
    "max_rhat_hyper": "Largest R-hat of the hyperparameters (intercepts, b, SDs, sigma; <= 1.01 passes).",
    "r_school_rhat_limit": "R-hat limit of each school effect, for K effects (multiplicity-aware rule).",
    "r_school_ratio_bulk": "Between/within-chain ratio of the school effects' split-chain mean squares (about 1 when mixed).",
    "r_school_ratio_limit": "Limit of that ratio (max(1 + block_tolerance, F quantile)).",
    "min_ess_q025_q975": "Smallest ESS of the 2.5% and 97.5% quantiles over the gated quantities (>= 400 passes).",
    "n_non_finite": "Gated quantities with a non-finite R-hat or ESS (any fails the gate).",
    "min_ess_bulk": "Smallest bulk ESS over the gated quantities (>= 400 passes).",
    "min_ess_tail": "Smallest tail ESS over the gated quantities (>= 400 passes).",
    "divergences": "Divergent transitions after warmup (0 passes).",
    "min_bfmi": "Smallest E-BFMI over chains (>= 0.3 is fine).",
    "schools": "Schools in the band.",
    "n_units": "Units left out one at a time (observations or cohorts).",
    "se": "Standard error of elpd_loo.",
    "p_loo": "Effective number of parameters (LOO).",
    "pareto_k_share": "Share of units with Pareto k above 0.7 (0-1).",
    "k_threshold": "arviz's sample-size dependent Pareto k threshold min(1 - 1/log10(S), 0.7).",
    "share_k_above_threshold": "Share of units with Pareto k above k_threshold (0-1).",
    "n_k_above_threshold": "Units with Pareto k above k_threshold: their PSIS estimate is unreliable (not corrected).",
    "n_units_high_k_diff": "Units above the k threshold in this model or the best one (they carry elpd_diff_high_k).",
    "elpd_diff_high_k": "Part of elpd_diff carried by the units above the k threshold (uncorrected PSIS estimates).",
    "draws_used": "Posterior draws used for LOO.",
    "group_effects_converged": "The cohort/profile effects LOO conditions on passed the convergence rules (reported, "
                               "not blocking); empty for models without them.",
    "reliable": "No unit of this model above the k threshold (as the loo package judges PSIS).",
    "note": "Why a model has no LOO values.",
    "draws": "Posterior draws kept (all chains).",
    "sample_seconds": "Sampling wall time, seconds.",
    "max_treedepth_share": "Share of draws that hit the maximum tree depth (0-1).",
    # brms-style posterior summary (report only)
    "parameter": "Intercept, fixed effect (year x subject) or SD; logit scale except M0 (proportion scale).",
    "estimate": "Posterior mean.",
    "est_error": "Posterior SD.",
    "lower_95": "2.5% posterior quantile.",
    "upper_95": "97.5% posterior quantile.",
    "rhat": "Rank-normalised split R-hat.",
    "ess_bulk": "Bulk effective sample size.",
    "ess_tail": "Tail effective sample size.",
}


def _with_stats() -> dict:
    out = dict(COLUMNS)
    for base in ("variance", "pct_total", "pct_latent"):
        out[f"{base}_lower"] = f"2.5% posterior quantile of {base}."
        out[f"{base}_upper"] = f"97.5% posterior quantile of {base}."
    for m in ("m0", "m1"):
        for stat, word in (("mean", "Mean"), ("p90", "90th percentile of"), ("max", "Largest")):
            out[f"{stat}_shrinkage_{m}_pp"] = f"{word} {m.upper()} shrinkage in the band, percentage points."
        out[f"mean_shrinkage_{m}_pp_modal_obs"] = (f"Mean {m.upper()} shrinkage in the band over the schools with "
                                                   "modal_n_obs observations only (like for like), percentage points.")
    out["modal_n_obs"] = "The most common number of observations per school in the sample."
    out["schools_modal_obs"] = "Schools of the band with exactly modal_n_obs observations."
    return out


DESCRIPTIONS = _with_stats()


# Column headers in the HTML report (units in brackets); a column not listed shows its name.
HEADERS = {
    "school_id": "School", "year": "Year", "subject": "Subject", "model": "Model", "description": "Model contents",
    "band": "Size band (mean students)", "schools": "Schools", "mean_n": "Mean n (students)", "n_obs": "Observations",
    "raw_proportion": "No-pooling estimate M1 (0-1)", "raw_mean_proportion": "No-pooling estimate M0 (0-1)",
    "m0_estimate": "M0 estimate (0-1)", "m1_estimate": "M1 estimate (0-1)",
    "m0_shrinkage_pp": "M0 shrinkage (pp)", "m1_shrinkage_pp": "M1 shrinkage (pp)",
    "component": "Component", "variance": "Variance (logit²)", "variance_lower": "Variance 2.5%",
    "variance_upper": "Variance 97.5%", "pct_total": "% of total variance", "pct_total_lower": "% of total 2.5%",
    "pct_total_upper": "% of total 97.5%", "pct_latent": "% of latent variance", "pct_latent_lower": "% of latent 2.5%",
    "pct_latent_upper": "% of latent 97.5%",
    "sd_school": "School SD (logit)", "lower": "2.5%", "upper": "97.5%",
    "unit": "Left out", "n_units": "Units", "elpd_loo": "ELPD (LOO)", "se": "SE", "p_loo": "Effective parameters",
    "elpd_diff": "ELPD difference", "se_diff": "SE of difference", "pareto_k_gt_0_7": "Units with k > 0.7",
    "pareto_k_share": "% units with k > 0.7", "k_threshold": "k threshold",
    "share_k_above_threshold": "% units above k threshold", "draws_used": "Draws used", "rank": "Rank",
    "n_k_above_threshold": "Units above k threshold", "n_units_high_k_diff": "High-k units in difference",
    "elpd_diff_high_k": "Difference carried by high-k units",
    "reliable": "Reliable",
    "draws": "Draws", "max_rhat": "Max R-hat", "n_rhat_failing": "Quantities failing their R-hat rule", "min_ess_bulk": "Min bulk ESS",
    "min_ess_tail": "Min tail ESS", "median_ess_bulk_school": "Median bulk ESS, school effects",
    "n_ess_failing": "Quantities with an ESS < 400", "min_ess_bulk_sd": "Min bulk ESS, SDs", "min_ess_tail_sd": "Min tail ESS, SDs",
    "worst_rhat": "Worst R-hat", "worst_ess": "Worst ESS",
    "r_cohort_share_rhat_gt_1_01": "% cohort effects R-hat > 1.01", "r_cohort_max_rhat": "Max R-hat, cohort effects",
    "r_cohort_min_ess_bulk": "Min bulk ESS, cohort effects", "r_cohort_share_ess_lt_min": "% cohort effects ESS < 400",
    "r_profile_share_rhat_gt_1_01": "% profile effects R-hat > 1.01", "r_profile_max_rhat": "Max R-hat, profile effects",
    "r_profile_min_ess_bulk": "Min bulk ESS, profile effects", "r_profile_share_ess_lt_min": "% profile effects ESS < 400",
    "r_school_arviz_rechecked": "School effects judged by arviz (near a threshold or extreme)",
    "r_cohort_arviz_rechecked": "Cohort effects judged by arviz (near a threshold or extreme)",
    "r_profile_arviz_rechecked": "Profile effects judged by arviz (near a threshold or extreme)",
    "divergences": "Divergences", "min_bfmi": "Min E-BFMI", "max_treedepth_hits": "Max tree depth hits",
    "max_treedepth_share": "% at max tree depth", "sample_seconds": "Sampling time (s)",
    "aspect": "Aspect", "frequentist": "Frequentist (statsmodels)", "bayesian": "Bayesian (Stan)",
    "sd_of_means": "SD of school means (logit)", "mean_posterior_sd": "Mean posterior SD (logit)",
    "data_vintage": "Data vintage",
    # brms-style posterior summary
    "parameter": "Parameter", "estimate": "Estimate", "est_error": "Est. error", "lower_95": "l-95% CI",
    "upper_95": "u-95% CI", "rhat": "R-hat", "ess_bulk": "Bulk ESS", "ess_tail": "Tail ESS",
}
for _m in ("m0", "m1"):
    for _stat, _word in (("mean", "Mean"), ("p90", "90th pct"), ("max", "Max")):
        HEADERS[f"{_stat}_shrinkage_{_m}_pp"] = f"{_word} shrinkage {_m.upper()} (pp)"
    HEADERS[f"mean_shrinkage_{_m}_pp_modal_obs"] = f"Mean shrinkage {_m.upper()}, modal obs. (pp)"
HEADERS.update({"modal_n_obs": "Modal observations", "schools_modal_obs": "Schools with modal obs."})


def header(column: str) -> str:
    """The report's header for a column: its display name, or the name with spaces."""
    return HEADERS.get(column, column.replace("_", " "))
